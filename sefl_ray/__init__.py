"""sefl-ray: synthesize, fine-tune, serve and judge educational feedback models, every stage on Ray."""

__version__ = "0.1.0"
