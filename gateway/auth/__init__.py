"""The auth package (see the README's Layout section)."""
