import csv, json, random, glob, io
d = json.load(open('/work/shared/rp3d-demo/disorder_label_dict.json'))
by_idx = {i: n for n, i in d.items()}
listed = set()
for f in sorted(glob.glob('bench/data/icd_handcheck_*.csv')):
    rows = [l for l in open(f, encoding='utf-8') if not l.startswith('#')]
    for r in csv.DictReader(io.StringIO(''.join(rows))):
        listed.add(r['name'].strip().lower())
pool = [by_idx[i] for i in range(1501, 3001) if by_idx[i].strip().lower() not in listed]
print('listed', len(listed), 'pool', len(pool))
random.Random(23).shuffle(pool)
A = [n for k, n in enumerate(pool) if k % 2 == 0]
B = [n for k, n in enumerate(pool) if k % 2 == 1]
open('/tmp/h10/pool_A.txt', 'w').write('\n'.join(A) + '\n')
open('/tmp/h10/pool_B.txt', 'w').write('\n'.join(B) + '\n')
print(len(A), len(B))
