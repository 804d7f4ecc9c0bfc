"""Datasets: the IDX format (``idx``), known datasets (``registry``), verified downloads
(``download``), archives turned into tensors (``dataset``); your own data: what a path holds
(``sources``), the image conversion (``images``), parallel decoding (``decode``), the decoded
cache (``cache``), the assembly into a dataset (``local``), the dataset a config names
(``load``) and ``dlcli data check`` (``check``). Only ``dataset``, ``local`` and ``load`` import
torch.
"""
