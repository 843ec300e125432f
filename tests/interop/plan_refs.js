// Plans (tests/interop/plans.py) may refer to an earlier step's result: in params, a string
// "$<step>.<path>" stands for that field of step <step>'s result, e.g. "$3.transactionId"
// for the id the CSMS assigned in StartTransaction. Shared by the peers in this folder.
'use strict';

function resolveRefs(value, results) {
    if (typeof value === 'string' && /^\$\d+\./.test(value)) {
        const [step, ...path] = value.slice(1).split('.');
        return path.reduce((node, key) => node?.[key], results[Number(step)]);
    }
    if (Array.isArray(value)) return value.map((item) => resolveRefs(item, results));
    if (value && typeof value === 'object') {
        return Object.fromEntries(Object.entries(value).map(
            ([key, item]) => [key, resolveRefs(item, results)]));
    }
    return value;
}

function readStdin() {
    return new Promise((resolve, reject) => {
        const chunks = [];
        process.stdin.on('data', (chunk) => chunks.push(chunk));
        process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
        process.stdin.on('error', reject);
    });
}

function report(fact) {
    process.stdout.write(JSON.stringify(fact) + '\n');
}

module.exports = { resolveRefs, readStdin, report };
