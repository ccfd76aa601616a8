# kiln's bundled example: the kind of code a data agent writes.
# Run it with:  kiln run examples/analysis.py --file examples/sales.csv
import pandas as pd
import matplotlib.pyplot as plt

df = pd.read_csv("sales.csv", parse_dates=["date"])
df["revenue"] = df["units"] * df["price"]

print("Rows:", len(df))
print(df.describe().round(2))

monthly = df.groupby([df["date"].dt.to_period("M"), "region"])["revenue"].sum().unstack()
print("\nRevenue by month and region:")
print(monthly.round(0))

ax = monthly.plot(kind="line", marker="o", figsize=(8, 4.5), title="Monthly revenue by region")
ax.set_xlabel("month")
ax.set_ylabel("revenue")
plt.tight_layout()
plt.show()
