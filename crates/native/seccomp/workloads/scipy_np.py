import numpy as np
from scipy import stats, optimize, linalg, interpolate, signal, integrate
rng = np.random.default_rng(2)
a = rng.normal(size=(300, 300))
print(np.linalg.inv(a)[0, 0], np.linalg.eigvals(a[:50, :50])[0], np.linalg.svd(a)[1][0])
print(np.fft.fft(rng.normal(size=4096))[1], np.fft.rfft2(a)[0, 0])
print(linalg.lu_factor(a)[0][0, 0], linalg.expm(a[:20, :20] / 100)[0, 0], linalg.solve(a, np.ones(300))[0])
print(stats.ttest_ind(rng.normal(size=100), rng.normal(size=100)).pvalue, stats.norm.cdf(1.0), stats.linregress(range(10), rng.normal(size=10)).slope)
print(optimize.minimize(lambda v: ((v - 3) ** 2).sum(), np.zeros(3)).x, optimize.curve_fit(lambda x, a, b: a * x + b, np.arange(10.0), np.arange(10.0) * 2 + 1)[0])
print(interpolate.interp1d([0, 1, 2], [0, 1, 4])(1.5), signal.welch(rng.normal(size=1024))[1][0], integrate.quad(np.sin, 0, np.pi)[0])
