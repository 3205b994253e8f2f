"""A planted model vs tiny-base v1 vs kNN on scikit-learn tables reduced to their most informative column
(mutual information on each split's training part), through the user-facing MLLMClassifier.

    python research/tiny-base-experiments/one_column_tables.py PLANTED_MODEL_DIR
"""
import sys
import warnings

warnings.filterwarnings("ignore")
import numpy as np
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.feature_selection import mutual_info_classif
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier

from mllm.inference.classifier import MLLMClassifier

res = {}
for name, loader in (("iris", load_iris), ("wine", load_wine), ("breast_cancer", load_breast_cancer)):
    X, y = loader(return_X_y=True)
    for shots in (8, 32, 128):
        for seed in (0, 1):
            Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y)
            col = int(np.argmax(mutual_info_classif(Xtr, ytr, random_state=0)))  # chosen on the training part
            Xtr, Xte = Xtr[:, [col]], Xte[:, [col]]
            rng = np.random.default_rng(seed); idx = rng.choice(len(ytr), size=min(shots, len(ytr)), replace=False)
            Xs, ys = Xtr[idx], ytr[idx]; Xq, yq = Xte[:50], yte[:50]
            for mname, clf in (("planted", MLLMClassifier(model=sys.argv[1])), ("tiny-base v1", MLLMClassifier(model="models/tiny-base")),
                               ("kNN", KNeighborsClassifier(n_neighbors=min(8, len(ys)), weights="distance"))):
                acc = float((clf.fit(Xs, ys).predict(Xq) == yq).mean())
                res.setdefault((name, shots, mname), []).append(acc)
            maj = float((np.bincount(ys).argmax() == yq).mean()); res.setdefault((name, shots, "majority"), []).append(maj)
for name in ("iris", "wine", "breast_cancer"):
    for shots in (8, 32, 128):
        print(name, shots, "  ".join(f"{m} {np.mean(res[(name, shots, m)]):.3f}" for m in ("planted", "tiny-base v1", "kNN", "majority")))
