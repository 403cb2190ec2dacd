"""GLUE's metrics on a task's predictions: accuracy, F1 of class 1 (MRPC, QQP), Matthews correlation
(CoLA). `score` gives a run's numbers; train.py and benchmarks/diagnose.py use it."""
import torch


def as_pair(preds, labels):
    p, y = torch.as_tensor(preds).cpu().view(-1), torch.as_tensor(labels).cpu().view(-1)
    if p.shape != y.shape:
        raise ValueError(f"{len(p)} predictions for {len(y)} labels")
    return p, y


def confusion(preds, labels):
    """(tp, tn, fp, fn) of a binary task, class 1 positive."""
    p, y = (t == 1 for t in as_pair(preds, labels))
    return [(a & b).sum().item() for a, b in ((p, y), (~p, ~y), (p, ~y), (~p, y))]


def accuracy(preds, labels):
    p, y = as_pair(preds, labels)
    return (p == y).float().mean().item() if len(y) else 0.0


def f1(preds, labels):
    """F1 of the positive class 1 (GLUE's MRPC and QQP metric); 0 when there is no true positive."""
    tp, _, fp, fn = confusion(preds, labels)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews(preds, labels):
    """Matthews correlation of a binary task (GLUE's CoLA metric); 0 when undefined."""
    tp, tn, fp, fn = confusion(preds, labels)
    denom = float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    return (tp * tn - fp * fn) / denom if denom else 0.0


def score(task, preds, labels):
    """{"metric": the task's main metric, <its name>: same, "acc": accuracy}."""
    main = {"acc": accuracy, "f1": f1, "mcc": matthews}[task.metric](preds, labels)
    return {"metric": main, task.metric: main, "acc": accuracy(preds, labels)}
