"""Small CLI subcommands that have no package of their own."""
