"""The `moderator` command line."""
