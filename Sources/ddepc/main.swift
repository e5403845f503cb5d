print("ddepc")
