from xdpfwd.cli import main

main()
