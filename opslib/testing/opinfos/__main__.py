"""``python3 -m opslib.testing.opinfos``: print the README's op table."""

from opslib.testing.opinfos import markdown_table

print(markdown_table())
