"""Building the records that leave on the moderation topics."""
