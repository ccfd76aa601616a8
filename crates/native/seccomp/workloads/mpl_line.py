import os, tempfile
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
d = tempfile.mkdtemp()
fig, ax = plt.subplots()
x = np.linspace(0, 10, 200)
ax.plot(x, np.sin(x), label="sin"); ax.legend(); ax.set_title("line")
fig.savefig(os.path.join(d, "line.png"))
fig.savefig(os.path.join(d, "line.svg"))
import io; b = io.BytesIO(); fig.savefig(b, format="png"); print(len(b.getvalue()) > 0)
