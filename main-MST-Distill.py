"""MST-Distill (Li et al., "MST-Distill: Mixture of Specialized Teachers for Cross-Modal Knowledge Distillation",
ACM MM 2025): co-train teacher, auxiliary teacher and student; train the MaskNets; distil from the routed mixture
of specialised teachers. The method is kd_methods/mst.py (its machinery in kd_methods/mst_*.py); this script only
names it.

Example (docs/mst-distill.md; RAVDESS, visual student):
    python main-MST-Distill.py --database RAVDESS --batch_size 32 --mode m1 --Tmodel DSCNN-I \
        --Smodel VisualBranchNet --AUXmodel AudioBranchNet
Without options it runs on the embedded Synthetic-MVD data in well under a minute and compares the distilled
student with a no-KD baseline trained with the same budget.
"""
import utils

if __name__ == "__main__":
    utils.main("MST-Distill")
