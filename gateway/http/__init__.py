"""The http package (see the README's Layout section)."""
