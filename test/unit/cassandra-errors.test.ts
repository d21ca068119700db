// How the Cassandra catalog classifies driver errors: an LWT whose outcome is unknown must
// be read back, a contended serial read retried, anything else thrown. With one node per
// datacenter the retry policy's "another coordinator" is none, so a timeout arrives wrapped
// in a NoHostAvailableError (seen on the three-datacenter cluster: 50 lock acquirers failed
// with "no host available (...: Server timeout during read query at consistency SERIAL)").
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import cassandra from 'cassandra-driver';
import { contended, unknownOutcome } from '../../src/catalog/cassandra.js';
import { CatalogError } from '../../src/catalog/types.js';

const { ResponseError, NoHostAvailableError, OperationTimedOutError } = cassandra.errors;
const codes = cassandra.types.responseErrorCodes;
const readTimeout = new ResponseError(codes.readTimeout, 'Server timeout during read query at consistency SERIAL (0 replica(s) responded over 2 required)');
const writeTimeout = new ResponseError(codes.writeTimeout, 'Server timeout during write query at consistency SERIAL');
const unavailable = new ResponseError(codes.unavailableException, 'Not enough replicas available for query at consistency SERIAL (2 required but only 1 alive)');
const down = new Error('Host considered as DOWN');
const wrap = (e: unknown) => new CatalogError('cassandra catalog ks@x: locks.get: ...', { cause: e });
const nha = (...inner: unknown[]) => new NoHostAvailableError(Object.fromEntries(inner.map((e, i) => [`10.0.0.${i + 1}:9042`, e])));

describe('cassandra error classification', () => {
  it('a timeout, bare or wrapped in NoHostAvailable, is contended and of unknown outcome', () => {
    for (const e of [readTimeout, writeTimeout, new OperationTimedOutError('client timeout'), nha(readTimeout), nha(writeTimeout, readTimeout)]) {
      assert.equal(contended(wrap(e)), true, String(e));
      assert.equal(unknownOutcome(wrap(e)), true, String(e));
    }
  });
  it('unavailable, a host down, or no host at all is neither: it is thrown (nothing was applied)', () => {
    for (const e of [unavailable, nha(down), nha(unavailable), new NoHostAvailableError({}), new Error('syntax')]) {
      assert.equal(contended(wrap(e)), false, String(e));
      assert.equal(unknownOutcome(wrap(e)), false, String(e));
    }
  });
  it('a NoHostAvailable mixing a timeout with a down host: the outcome is unknown (the first coordinator may have applied it), but it is not mere contention', () => {
    const e = wrap(nha(writeTimeout, down));
    assert.equal(unknownOutcome(e), true);
    assert.equal(contended(e), false);
  });
});
