"""Event schemas: what arrives on `uploads` and what leaves on the moderation topics."""
