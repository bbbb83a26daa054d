from sealguard.cli import main

main()
