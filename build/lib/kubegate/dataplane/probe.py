Y = "dp"
