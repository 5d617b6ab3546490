"""The HTTP front end of the NaCS service. It never imports torch."""
