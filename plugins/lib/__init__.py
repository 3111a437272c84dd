"""Technique math shared by several plugins (GPTQ solver and bit policies, LoRA test-time training,
codecs), and plugin loading from files and entry points (`loading`, for the command line and the validator).
Not plugins themselves: the registry skips this package; the bundler embeds what an enabled plugin imports
from it."""
