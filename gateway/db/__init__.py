"""The db package (see the README's Layout section)."""
