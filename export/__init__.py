"""bitnet.export"""
