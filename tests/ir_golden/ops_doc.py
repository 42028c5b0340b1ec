#!/usr/bin/env python3
"""ops_doc.py: copies the comments of ir/ops.def (every section but the dense ops,
which docs/ir.md describes by hand) into docs/ir.md's op tables.
  python3 tests/ir_golden/ops_doc.py          rewrite docs/ir.md
  python3 tests/ir_golden/ops_doc.py --check  exit 1 if docs/ir.md is stale (ctest ir_docs_ops)"""
import os
import re
import sys
ROOT=os.path.join(os.path.dirname(os.path.abspath(__file__)),'..','..')
s=open(os.path.join(ROOT,'ir/ops.def')).read()
parts=re.split(r'^/\* -{10,} (.*?) \*/\s*$',s,flags=re.M)
# parts: [pre, title1, body1, title2, body2, ...]
def flags(f):
    return ' '.join(x for x,k in (('E','OPF_ELEMENTWISE'),('R','OPF_RANDOM'),('C','OPF_COLLECTIVE'),('N','OPF_NODIFF')) if k in f)
def table(body):
    rows=[];comment=[]
    for l in body.split('\n'):
        m=re.match(r'^OP\((\w+),\s*"([^"]*)",\s*(-?\d+),\s*(-?\d+),\s*([^,]+),\s*(\w+),\s*(\w+)\)',l)
        if m:
            rows.append((m.group(2),m.group(3),m.group(4),m.group(5),' '.join(comment).strip())); comment=[]; continue
        t=l.strip()
        if t.startswith('/*'): comment=[]; t=t[2:]
        elif t.startswith('*') and not t.startswith('*/'): t=t[1:]
        if t.endswith('*/'): t=t[:-2]
        if t.strip(): comment.append(t.strip())
    out=['| op | in, out | flags | semantics |','| --- | --- | --- | --- |']
    for name,nin,nout,f,txt in rows:
        esc=txt.replace("|","\\|")
        nout={"-1":"n","-2":"n","-3":"n-1"}.get(nout,nout) # ops.def: set by the pass, n_in, n_in - 1
        out.append(f'| `{name}` | {"n" if nin=="-1" else nin}, {nout} | {flags(f)} | {esc} |')
    return out, len(rows)
out=[]
for k in range(1,len(parts),2):
    title,body=parts[k].strip(),parts[k+1]
    if title.startswith('dense ops'): continue
    t,n=table(body)
    if n==0: continue
    out+=[f'### {title[0].upper()+title[1:]}','']+t+['']
doc=os.path.join(ROOT,'docs/ir.md')
d=open(doc).read()
i=d.find('<!-- generated from ir/ops.def')
if i<0: i=d.index('### MoE ops')
j=d.index('## How each layer expands')
gen=('<!-- generated from ir/ops.def: its comments, verbatim (an empty cell: see the op above) -->\n\n'
     +'\n'.join(out)+'\n')
new=d[:i]+gen+d[j:]
if '--check' in sys.argv:
    names=re.findall(r'^OP\(\w+,\s*"([^"]*)"',s,flags=re.M)
    missing=[n for n in names if '`%s`' % n not in new]
    if missing:
        sys.exit('docs/ir.md does not describe: ' + ', '.join(missing))
    if new!=d:
        sys.exit('docs/ir.md is out of step with ir/ops.def: run python3 tests/ir_golden/ops_doc.py')
else:
    open(doc,'w').write(new)
