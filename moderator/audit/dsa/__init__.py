"""EU DSA statements of reasons built from audit records."""
