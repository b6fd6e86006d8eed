from mdagent_hpc.cli.main import main

main()
