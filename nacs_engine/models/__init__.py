"""CTR models: DeepFM and DCNv2."""
