from lfdm_cli.cli.app import main

main()
