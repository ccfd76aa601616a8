//! The code each workload runs. Inside kiln the runner does the set-up
//! (site directory, matplotlib's config dir with the prebuilt font cache)
//! and `plt.show()` renders the open figure as a PNG display; outside kiln
//! (`python3`, `docker-run`, `warm-python3`) a prelude does the same set-up
//! and the figure is rendered the same way (PNG at 100 dpi, tight bbox,
//! base64), so every method does the same work.

/// W1: `print(1)` in a fresh sandbox.
pub const W1: &str = "print(1)";

/// W2 as sent to kiln.
pub const W2: &str = r#"import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
df = pd.DataFrame(np.random.rand(1000, 4), columns=list("abcd"))
print(df.describe())
df.plot()
plt.show()
"#;

/// W2 outside kiln: the same work, `plt.show()` done as kiln's runner does it.
pub const W2_PLAIN: &str = r#"import io, base64
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
df = pd.DataFrame(np.random.rand(1000, 4), columns=list("abcd"))
print(df.describe())
df.plot()
_buf = io.BytesIO()
plt.gcf().savefig(_buf, format="png", dpi=100, bbox_inches="tight")
print(len(base64.b64encode(_buf.getvalue())))
plt.close("all")
"#;

/// W3: the first execution of the session, then the measured ones.
pub const W3_FIRST: &str = "x = 1";
pub const W3: &str = "x += 1";

/// What a fresh plain interpreter runs before the workload: the pinned
/// libraries (`-I` ignores PYTHONPATH) and, for W2, matplotlib's config dir
/// seeded with the runtime's prebuilt font cache.
pub fn prelude(site_dir: &str, mpl_cache: &str, with_matplotlib: bool) -> String {
    let mut s = format!("import site\nsite.addsitedir({site_dir:?})\n");
    if with_matplotlib {
        s.push_str(&format!(
            r#"import os, glob, shutil
os.environ.setdefault("MPLBACKEND", "Agg")
_d = os.environ.setdefault("MPLCONFIGDIR", "/tmp/.mpl")
os.makedirs(_d, exist_ok=True)
for _f in glob.glob({mpl_cache:?} + "/*.json"):
    if not os.path.exists(os.path.join(_d, os.path.basename(_f))):
        shutil.copy(_f, _d)
"#
        ));
    }
    s
}

/// A persistent plain interpreter (the `warm-python3` reference): warmed
/// like kiln's zygote (libraries imported, one DataFrame, one figure),
/// then it reads one JSON-encoded piece of code per line, runs it with
/// stdout captured, and answers with the time the code itself took.
pub const WARM_DRIVER: &str = r#"
import sys, json, io, time, contextlib
import numpy as np, pandas as pd, matplotlib
import matplotlib.pyplot as plt
pd.DataFrame(np.random.rand(10, 2)).describe()
plt.figure(); plt.plot([1, 2]); plt.close("all")
ns = {"__name__": "__main__"}
out = sys.stdout
print(json.dumps({"ready": True}), file=out, flush=True)
for line in sys.stdin:
    code = json.loads(line)
    buf = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "<cell>", "exec"), ns)
    t1 = time.perf_counter()
    print(json.dumps({"work_ms": (t1 - t0) * 1e3}), file=out, flush=True)
"#;
