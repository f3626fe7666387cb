"""One module per `kubegate` subcommand, each with main(args) -> int."""
