from lmlab.report import main

main()
