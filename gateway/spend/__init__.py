"""The spend package (see the README's Layout section)."""
