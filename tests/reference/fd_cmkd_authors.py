"""The FD-CMKD authors' loss code, copied unchanged for the parity test of tests/test_fd_cmkd.py.

Source: github.com/Johumliu/FD-CMKD (Liu et al., "Distilling Cross-Modal Knowledge via Feature Disentanglement",
AAAI 2026), read from its public copy zxn0710/re-FD-CMKD-main at commit feda414a2290ba40c22ebd5e81cb7354534e6e75:
``log``, ``norm_feat``, ``FDFilter`` and ``Classifier`` from ``utils/utils.py``; the body of
:func:`audio_direction_loss` is the audio student's lines of ``train_epoch`` in ``main_fd_cmkd.py`` (the visual
student's lines are the same with the modalities swapped). Neither copy carries a licence file; these few lines are
quoted for a test only and are not part of the framework. Only the function wrapping the quoted lines and its
comments are ours; trailing spaces were removed and one line longer than 120 columns was continued with a backslash.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


# -- utils/utils.py (unchanged) -----------------------------------------------------------------------------------
def log(tensor):
    result_tensor = torch.zeros_like(tensor)
    positive_mask = tensor > 0
    negative_mask = tensor < 0
    result_tensor[positive_mask] = torch.log1p(tensor[positive_mask])
    result_tensor[negative_mask] = -torch.log1p(torch.abs(tensor[negative_mask]))
    return result_tensor

def norm_feat(x):
    x_norms = torch.norm(x, p=2, dim=1, keepdim=True)
    x_normalized_features = x / x_norms.clamp(min=1e-8)
    return x_normalized_features

class FDFilter(nn.Module):
    def __init__(self):
        super(FDFilter, self).__init__()
        self.filter1 = nn.Parameter(torch.zeros(257), requires_grad=False)
        self.filter2 = nn.Parameter(torch.zeros(257), requires_grad=False)
        self.init_filter()

    def init_filter(self):
        self.filter1.data[1:129] = 1
        self.filter2.data[129:] = 1

    def forward(self, x):
        freq_domain = torch.fft.rfft(x, dim=1)

        binary_filter1 = (self.filter1 >= 0.5).float()
        filtered_freq_domain1 = freq_domain * binary_filter1
        binary_filter2 = (self.filter2 >= 0.5).float()
        filtered_freq_domain2 = freq_domain * binary_filter2

        low_freq_features1 = torch.fft.irfft(filtered_freq_domain1, dim=1).real
        low_freq_features2 = torch.fft.irfft(filtered_freq_domain2, dim=1).real
        return low_freq_features1,low_freq_features2

class Classifier(nn.Module):
    def __init__(self, input_dim, n_classes):
        super(Classifier, self).__init__()
        self.fc = nn.Linear(input_dim, n_classes)

    def forward(self, x):
        x = F.relu(x)
        x = self.fc(x)
        return x


# -- main_fd_cmkd.py, train_epoch: the audio student's terms (a_s: student feature, v_t: the visual teacher's
# feature computed under no_grad, out11: the student's logits) -----------------------------------------------------
def audio_direction_loss(a_s, v_t, out11, label, filter1, filter2, cls_align_a_low, cls_align_a_high,
                         cls_task_a_low, cls_task_a_high):
    """``(loss_kd_a_low, loss_kd_a_high, loss_align_a, loss_task_a, loss_a)`` as ``train_epoch`` computes them."""
    criterion = nn.CrossEntropyLoss()
    criterion2 = nn.MSELoss()

    v_t_low,v_t_high = filter2(v_t)
    a_s_low,a_s_high = filter1(a_s)

    loss_kd_a_low = criterion2(norm_feat(v_t_low).detach(), norm_feat(a_s_low))
    loss_kd_a_high = criterion2(log(norm_feat(v_t_high)).detach(), log(norm_feat(a_s_high)))

    loss_align_a_low = criterion(cls_align_a_low(a_s_low), label) + criterion(cls_align_a_low(v_t_low), label)
    loss_align_a_high = criterion(cls_align_a_high(a_s_high), label) + criterion(cls_align_a_high(v_t_high), label)

    loss_kd_a = loss_kd_a_low + loss_kd_a_high

    loss_align_a = loss_align_a_low + loss_align_a_high

    loss_task_a = criterion(out11, label) + criterion(cls_task_a_low(a_s_low), label) + \
        criterion(cls_task_a_high(a_s_high), label)

    loss_a = loss_kd_a + loss_align_a + loss_task_a
    return loss_kd_a_low, loss_kd_a_high, loss_align_a, loss_task_a, loss_a
