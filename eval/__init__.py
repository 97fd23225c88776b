"""bitnet.eval"""
