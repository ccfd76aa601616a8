import numpy as np, pandas as pd
df = pd.DataFrame(np.random.default_rng(0).normal(size=(1000, 4)), columns=list("abcd"))
print(df.describe())
print(df.groupby(df.a > 0).mean())
print(df.to_html()[:100])
