"""Experiments of the Modality Focusing Hypothesis (Xue et al., "The Modality Focusing Hypothesis: Towards
Understanding Crossmodal Knowledge Distillation", ICLR 2023): Fig. 2 / Fig. 3 / Table 2 on Gaussian data,
Algorithm 1 (modality-general decisive feature ranking) and KD from nullified teachers on any dataset; and the
diagnostic of the Non-target Divergence Hypothesis (Chen et al., arXiv:2409.02438) between two checkpoints.

Each run writes MFH/<exp>/<tag>_<timestamp>/ under --out_dir (args.json, log.txt, CSV, Markdown, figures,
results.json) and prints "Run directory: <path>" last.

Examples:
    python main-MFH.py --exp table2 --runs 10                    # Table 2 with gt / Algorithm 1 / random teachers
    python main-MFH.py --exp table2 --swap_kd_modalities         # the public code's regular-KD modality swap
    python main-MFH.py --exp gamma                                # Fig. 2 (CSV, Markdown, PNG)
    python main-MFH.py --exp gamma --sweep_fixed teacher          # Fig. 2 with the teacher's data held fixed
    python main-MFH.py --exp alpha --runs 5 --epochs 500          # Fig. 3, shorter
    python main-MFH.py --exp rank --layer input                   # Algorithm 1 on Synthetic-MVD, no files needed
    python main-MFH.py --exp rank --database RAVDESS --mode m1 --ckpt_a runs/S/RAVDESS/.../best.pth \\
        --ckpt_b runs/S/RAVDESS/.../best.pth --layer fc2          # saliences of the audio net's fc2 vs the video net
    python main-MFH.py --exp nullify --ratios 0.25 0.5 0.75       # KD from nullified teachers (Synthetic-MVD)
    python main-MFH.py --exp ntdh --mode m1 --ckpt_a runs/S/Synthetic-MVD/<m2 run>/best.pth \\
        --ckpt_b runs/NTDH-UU/Synthetic-MVD/<m1 run>/best.pth    # NTDH: non-target divergence per class (val)
"""
import utils

if __name__ == "__main__":
    utils.mfh_main()
