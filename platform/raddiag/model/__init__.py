"""RadDiag network (``nets``) and its parts (``blocks``); the training losses, the key-slice
attention loss included, are in :mod:`raddiag.losses`.

Typical use::

    model = build_model(cfg.model, num_labels, label_embeddings=table)  # table only for head="ke"
    out = model(images, scan_mask, slice_mask, modality_ids)             # logits, slice_attention, embedding
    loss = bce(out["logits"], labels) + w * key_slice_loss(out["slice_attention"], key_slice, slice_mask, scan_mask)
"""

from raddiag.model.nets import RadDiagNet, build_model, load_pretrained

__all__ = ["RadDiagNet", "build_model", "load_pretrained"]
