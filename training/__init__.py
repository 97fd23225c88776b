"""bitnet.training"""
