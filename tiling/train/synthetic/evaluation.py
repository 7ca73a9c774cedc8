"""The periodic evaluation of a synthetic-task run (:func:`evaluate`): answer accuracy, answer loss, the
deviation from the same weights at full resolution, mean resolution, costs relative to full
resolution, load imbalance and (scan scope) the IFQ/CER of the first layer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tiling.metrics import layer_tile_metrics, load_imbalance
from tiling.ops import scan_cost
from tiling.train.data import BurstRepeatDataset, collate
from tiling.train.model import TiledLM

from .options import SyntheticOptions

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: TiledLM, eval_ds, opts: SyntheticOptions, device: torch.device,
             previous_patterns: torch.Tensor | None = None) -> tuple[dict, torch.Tensor | None]:
    """The metrics of ``model`` on ``eval_ds`` in batches of ``--batch-size`` (the model is left in training mode).

    Metrics: ``accuracy`` and ``loss`` of the answers; ``deviation``, the relative L2 distance of the
    answers' logits from those of the same weights at budget 1 (seed 000 Thm 3.5 bounds it); mean
    ``resolution``; ``scan_cost`` (all multiply-adds of the scan), ``recurrence_cost`` (recurrence and
    boundary terms) and ``block_cost`` (the whole layer), each relative to full resolution
    (:func:`tiling.ops.scan_cost`); ``imbalance``, the mean over rows of :func:`tiling.metrics.load_imbalance`
    of the tile costs; on the repeat task ``accuracy_by_index``, ``accuracy_early`` (answers whose source
    lies in the burst's first tile) and ``accuracy_late``; on the scan scope (unless ``--no-ifq``)
    the first layer's ``ifq``, ``cer`` and their terms (:func:`tiling.metrics.layer_tile_metrics`).

    Returns
    -------
    ``(metrics, patterns)``: the patterns of the first layer's tiles (None without IFQ), which the next
    evaluation compares with (``previous_patterns``).
    """
    model.eval()
    correct = total = 0
    loss_sum = dev_num = dev_den = 0.0
    res, rec, tot, row_costs = [], [], [], []
    by_index = isinstance(eval_ds, BurstRepeatDataset)
    hits_k = torch.zeros(getattr(eval_ds, "burst_len", 1), dtype=torch.float64)
    count_k = torch.zeros_like(hits_k)
    L = eval_ds.seq_len
    full = scan_cost(L, opts.tile_size, 1.0, opts.d_state, opts.d_state, model.layers[0].d_inner, boundary_gain=True)
    full_block = model.layers[0].cost(L, signal=False)  # the whole block at budget 1, one row
    blk = []
    for s in range(0, len(eval_ds), opts.batch_size):
        rows = range(s, min(s + opts.batch_size, len(eval_ds)))
        x, y, m = (t.to(device) for t in collate([eval_ds[i] for i in rows]))
        logits, plans = model(x, return_plans=True)
        full_logits = model(x, budget=1.0)  # the same weights at full resolution (seed 000 Thm 3.5)
        dev_num += float((logits - full_logits)[m].pow(2).sum())
        dev_den += float(full_logits[m].pow(2).sum())
        pred = logits.argmax(-1)
        correct += int((pred == y)[m].sum())
        total += int(m.sum())
        if by_index:  # accuracy by position of the answer in its burst
            k = eval_ds.target_index(x)[m].cpu()
            hits_k += torch.bincount(k, weights=(pred == y)[m].cpu().double(), minlength=hits_k.numel())
            count_k += torch.bincount(k, minlength=hits_k.numel()).double()
        loss_sum += float(F.cross_entropy(logits[m], y[m], reduction="sum"))
        for plan in plans:
            res.append(plan.mean_resolution())
            lc = plan.meta["layer_cost"]
            blk.append(torch.full((plan.batch,), lc["total"] / plan.batch / full_block["total"], dtype=torch.float64))
            if "scan_cost" in plan.meta:  # scan scope: the scan's own counts per row
                costs = torch.tensor([c["madd_total"] for c in plan.meta["scan_cost"]], dtype=torch.float64)
                recs = torch.tensor([c["madd_recurrence"] + c["madd_boundary"] for c in plan.meta["scan_cost"]],
                                    dtype=torch.float64)
                tot.append(costs / full["madd_total"])
                rec.append(recs / (full["madd_recurrence"] + full["madd_boundary"]))
            else:  # block scope: the scan runs at R = 1 on the compact sequence, so its cost is ∝ L_c
                share = torch.full((plan.batch,), lc["scan"] / plan.batch / full_block["scan"], dtype=torch.float64)
                tot.append(share)
                rec.append(share)
            row_costs.append(plan.cost.sum(-1).to(torch.float64))
    metrics = {
        "accuracy": correct / total,
        "loss": loss_sum / total,
        "deviation": math.sqrt(dev_num / dev_den) if dev_den > 0 else 0.0,
        "resolution": float(torch.cat(res).mean()),
        "scan_cost": float(torch.cat(tot).mean()),
        "recurrence_cost": float(torch.cat(rec).mean()),
        "block_cost": float(torch.cat(blk).mean()),
        "imbalance": float(torch.stack([load_imbalance(c) for c in row_costs]).mean()),
    }
    if by_index:
        acc_k = hits_k / count_k
        metrics["accuracy_by_index"] = [None if c == 0 else round(float(a), 4) for a, c in zip(acc_k, count_k)]
        # answers whose lag-`period` source lies in the burst's first tile, and all the others
        early = slice(eval_ds.period, eval_ds.period + opts.tile_size)
        late = slice(eval_ds.period + opts.tile_size, None)
        metrics["accuracy_early"] = float(hits_k[early].sum() / count_k[early].sum().clamp_min(1))
        metrics["accuracy_late"] = float(hits_k[late].sum() / count_k[late].sum().clamp_min(1))
    patterns = None
    if not opts.no_ifq and model.layers[0].scope == "scan":  # IFQ measures the scan scope's tiles
        x0 = eval_ds[0][0].unsqueeze(0).to(device)
        h = model.norms[0](model.embedding(x0))
        tm = layer_tile_metrics(model.layers[0], h, previous=previous_patterns)
        metrics.update(ifq=float(tm["ifq"].mean()), cer=tm["cer"], ifq_compute=tm["compute"], ifq_memory=tm["memory"])
        patterns = tm["patterns"]
    model.train()
    return metrics, patterns
