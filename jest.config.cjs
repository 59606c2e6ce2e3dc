// Tests are compiled by tsc with the rest of the project and run as native ESM
// (node --experimental-vm-modules), so there is no transform step.
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/dist/tests'],
  testMatch: ['**/*.test.js'],
  transform: {},
  testTimeout: 120000,
  verbose: true,
};
