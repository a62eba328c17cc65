"""What a request and an answer look like: parsing, FaceDicts, Open Inference, deadlines, typed errors.

Imports nothing of ``runtime``; of the network, only the names of its outputs (``nn.pose``).
"""
