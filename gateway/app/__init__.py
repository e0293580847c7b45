"""The app package (see the README's Layout section)."""
