from bslrun.cli import main

main()
