"""The NTDH authors' loss and diagnostic functions, quoted for the parity tests of tests/test_ntdh.py.

Source: https://github.com/elonchern/Non-target-Divergence-Hypothesis at commit
4a02ed03b85c4448fb269ef82ca2486bce6db66f (Chen et al., "Non-target Divergence Hypothesis", arXiv:2409.02438):

* ``pd_diff`` and ``error_distribution``: gauss/main.py (lines 35-59 and 80-99);
* ``kd_kl_pssm``: the ``KD_KL_PSSM`` branch of ``train_kd`` in gauss/main.py (line 183), its one expression wrapped
  in a function (``criterion_pl`` is ``torch.nn.KLDivLoss(reduction='batchmean')`` there, line 155);
* ``_get_gt_mask``, ``_get_other_mask``, ``cat_mask`` and ``dkd_loss``: gauss/distiller_zoo/DKD.py (whole file);
* ``js_divergence``: sklearn/distances/jsd.py (its helpers are the same as DKD.py's, quoted once).

Edits: comment lines, trailing spaces and runs of blank lines removed, and ``kd_kl_pssm``'s expression broken after
a comma to fit 120 columns; every statement is the original's. Licence: the repository has no licence file at that
commit; these few lines are quoted for testing only, not shipped in the framework's code.
"""
import torch
import torch.nn as nn  # noqa: F401 - imported by the original modules
from torch.nn import functional as F

criterion_pl = torch.nn.KLDivLoss(reduction='batchmean')


def pd_diff(pl,y_data,y_pred):

    max_value, max_index_t = torch.max(torch.softmax(pl, dim=1), dim=1)
    mask_tf = max_index_t - y_data
    mask_tf[mask_tf!=0] = True # Where the teacher's predictions were incorrect
    mask_tt = 1 - mask_tf

    max_index_s = torch.argmax(y_pred, dim=1)
    mask_sf = max_index_s - y_data
    mask_sf[mask_sf!=0] = True # Where the student's predictions were incorrect
    mask_st = 1 - mask_sf

    cosine_similarity = torch.cosine_similarity(pl,y_pred, dim=1)

    normalized_similarity = (cosine_similarity + 1) / 2

    cosine_mask_g = cosine_similarity.ge(0.996) # Keep values greater than 0.996, set values less than 0.996 to 0.

    mask = normalized_similarity*cosine_mask_g

    omega = mask_tf*mask + mask_tt

    return omega, mask_tf


def error_distribution(x1, x2, y2, model,teacher_model):
    model.eval()
    teacher_model.eval()
    with torch.no_grad():
        output = model(x2)
        pl = teacher_model(x1)

        _, mask = pd_diff(pl,y2,output)

        indices = torch.nonzero(y2 == 0).squeeze()
        mask_0 = mask[indices]

        error_output = torch.softmax(output[indices][mask_0.bool()], dim=1)
        error_pl = torch.softmax(pl[indices][mask_0.bool()], dim=1)

        error_output_mean = torch.mean(error_output, dim=0)
        error_pl_mean = torch.mean(error_pl, dim=0)

    return error_output_mean,error_pl_mean


def kd_kl_pssm(output, pl, omega):
    return criterion_pl(torch.log_softmax(output/0.7*omega.unsqueeze(1) ,dim=1),
                        torch.softmax(pl/0.7*omega.unsqueeze(1), dim=1))


def _get_gt_mask(logits, target):
    target = target.reshape(-1)
    mask = torch.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1).bool()
    return mask


def _get_other_mask(logits, target):
    target = target.reshape(-1)
    mask = torch.ones_like(logits).scatter_(1, target.unsqueeze(1), 0).bool()
    return mask


def cat_mask(t, mask1, mask2):
    t1 = (t * mask1).sum(dim=1, keepdims=True)
    t2 = (t * mask2).sum(1, keepdims=True)
    rt = torch.cat([t1, t2], dim=1)
    return rt


def dkd_loss(logits_student, logits_teacher, target, alpha, beta, temperature,omega):
    gt_mask = _get_gt_mask(logits_student, target)
    other_mask = _get_other_mask(logits_student, target)
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)

    tckd_kl = F.kl_div(log_pred_student, pred_teacher, reduction='none')
    weight_tckd_kl = tckd_kl *  (omega[:,None])
    total_tckd_kl = torch.sum(weight_tckd_kl)

    tckd_loss = (total_tckd_kl* (temperature**2)/ target.shape[0])

    pred_teacher_part2 = F.softmax(
        logits_teacher / temperature - 1000.0 * gt_mask, dim=1
    )
    log_pred_student_part2 = F.log_softmax(
        logits_student / temperature - 1000.0 * gt_mask, dim=1
    )

    nckd_kl = F.kl_div(log_pred_student_part2 , pred_teacher_part2, reduction='none',)

    weight_nckd_kl = nckd_kl * (omega[:,None])
    total_nckd_kl = torch.sum(weight_nckd_kl)

    nckd_loss = (total_nckd_kl * (temperature**2) / target.shape[0])

    return alpha * tckd_loss + beta * nckd_loss


def js_divergence(logits_student, logits_teacher, target,temperature=1.0):
    gt_mask = _get_gt_mask(logits_student, target)
    other_mask = _get_other_mask(logits_student, target)
    pred_student = F.softmax(logits_student, dim=1)
    pred_teacher = F.softmax(logits_teacher, dim=1)
    pred_student = cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    log_pred_teacher = torch.log(pred_teacher)

    m = 0.5 * (pred_student + pred_teacher)

    tckl_sm = (
        F.kl_div(log_pred_student, m, reduction='sum')
        * (temperature**2)
        / target.shape[0]
    )
    tckl_tm = (
        F.kl_div(log_pred_teacher, m, reduction='sum')
        * (temperature**2)
        / target.shape[0]
    )

    tcjsd = 0.5 * (tckl_sm + tckl_tm)

    pred_teacher_part2 = F.softmax(
        logits_teacher - 1000.0 * gt_mask, dim=1
    )
    pred_student_part2 = F.softmax(
        logits_student - 1000.0 * gt_mask, dim=1
    )
    log_pred_student_part2 = F.log_softmax(
        logits_student - 1000.0 * gt_mask, dim=1
    )
    log_pred_teacher_part2 = F.log_softmax(
        logits_teacher - 1000.0 * gt_mask, dim=1
    )

    m_part2 = 0.5 * (pred_teacher_part2 + pred_student_part2)
    nckl_sm = (
        F.kl_div(log_pred_student_part2, m_part2, reduction='sum')
        * (temperature**2)
        / target.shape[0]
    )

    nckl_tm = (
        F.kl_div(log_pred_teacher_part2, m_part2, reduction='sum')
        * (temperature**2)
        / target.shape[0]
    )

    ncjsd = 0.5 * (nckl_sm + nckl_tm)

    return tcjsd, ncjsd
