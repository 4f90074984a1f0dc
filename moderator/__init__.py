"""moderator: streaming content moderation for image uploads."""

__version__ = "0.1.0"
