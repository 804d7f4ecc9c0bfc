"""Datasets: the IDX format (``idx``), known datasets (``registry``), verified downloads
(``download``) and archives turned into tensors (``dataset``, the only module that imports torch).
"""
