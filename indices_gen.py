"""Write metadata/<database>_indices.csv: 20 split permutations drawn exactly as the reference's indices_gen.py.

Example: python indices_gen.py --database AV-MNIST --data_root ./data
"""
import utils

if __name__ == "__main__":
    utils.indices_main()
