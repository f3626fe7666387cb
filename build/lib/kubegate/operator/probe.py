X = "op"
