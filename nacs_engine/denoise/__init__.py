"""Label correction and Monte Carlo dropout denoising."""
