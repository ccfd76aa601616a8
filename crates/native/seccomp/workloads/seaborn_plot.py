import os, tempfile
import matplotlib; matplotlib.use("Agg")
import numpy as np, pandas as pd, seaborn as sns
import matplotlib.pyplot as plt
rng = np.random.default_rng(1)
df = pd.DataFrame({"x": rng.normal(size=300), "y": rng.normal(size=300), "g": rng.choice(list("abc"), 300)})
sns.set_theme()
g = sns.scatterplot(data=df, x="x", y="y", hue="g")
plt.savefig(os.path.join(tempfile.mkdtemp(), "s.png"))
plt.figure(); sns.histplot(df.x, kde=True); plt.savefig(os.path.join(tempfile.mkdtemp(), "h.png"))
plt.figure(); sns.heatmap(df[["x","y"]].corr(), annot=True); plt.savefig(os.path.join(tempfile.mkdtemp(), "c.png"))
print("ok")
