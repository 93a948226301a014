"""Small domain-free helpers every stage shares: atomic files, JSON-safe values, table reading."""
