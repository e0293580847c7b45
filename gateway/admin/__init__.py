"""The admin package (see the README's Layout section)."""
